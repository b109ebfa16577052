"""Known model shapes (``presets``) and the synthetic checkpoint generator
(``make_checkpoint``) used by tests and benchmarks."""
