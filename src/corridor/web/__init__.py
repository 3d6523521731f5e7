"""The operator's faces in the browser: the live dashboard of `corridor up` and the pilot report."""
