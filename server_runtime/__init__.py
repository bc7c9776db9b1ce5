"""The server runtime both services share: bootstrap and signals (runtime), flag-or-environment configuration
(config), domain-error-to-status mapping (error_mapping), request edge handling (edge), health and reflection
(introspection), and stream admission and idle-stream watchdog (streams)."""
