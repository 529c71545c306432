"""The Textual front end (``influence-tui``). Importing it never imports torch."""
