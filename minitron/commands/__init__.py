"""One module per CLI verb; each defines `run(cfg, run_dir=None)`."""
