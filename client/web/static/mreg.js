// mreg web UI: the little script htmx does not cover. Says when a live update last arrived, and that the
// aliases panel (kept as loaded, since its forms send what it shows) may be out of date.
document.addEventListener("htmx:sseMessage", function (event) {
  var status = document.getElementById("live-status");
  if (status) { status.textContent = "updated " + new Date().toLocaleTimeString(); }
  var stale = document.getElementById("aliases-stale");
  if (stale) { stale.hidden = false; }
});
