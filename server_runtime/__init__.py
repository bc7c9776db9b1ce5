"""gRPC serving pieces both services share (stream admission, idle-stream watchdog)."""
