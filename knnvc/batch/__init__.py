"""Folders of files: the plan, the run, its worker threads, the settings record, and the Ray job."""
