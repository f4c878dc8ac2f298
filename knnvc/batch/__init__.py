"""Folders of files: the plan, the run, its worker threads, the settings record and its identities, the Ray job."""
