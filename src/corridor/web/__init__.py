"""The operator's faces in the browser: the pilot report (the live dashboard is not built yet)."""
