"""Text patching: text memory, protocols, sources, reader and checker, stress."""
