"""One module per screen; each screen takes a `StudioContext` and reads the store from Textual workers."""
