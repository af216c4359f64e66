"""The device manager: validate -> diff -> apply -> persist -> reconcile (no HTTP)."""
