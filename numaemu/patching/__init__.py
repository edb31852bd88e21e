"""Text patching: text memory (textmem), text_poke and the protocols (protocols, kernel,
stop_machine, text_poke_bp with its INT3 handler, nosync), patch sources, the reader and checker,
recovery, protocols given as data (data_protocol), and ``stress`` (stress, stress_node, reader_tasks,
stress_report, patch_bench)."""
