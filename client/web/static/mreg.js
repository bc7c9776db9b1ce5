// mreg web UI: the little script htmx does not cover. Says when a live update last arrived.
document.addEventListener("htmx:sseMessage", function (event) {
  var status = document.getElementById("live-status");
  if (status) { status.textContent = "updated " + new Date().toLocaleTimeString(); }
});
