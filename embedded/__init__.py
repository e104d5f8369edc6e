"""The embedded local stack: local processes with PID files, the alert receiver and the demo driver."""
