"""Run folders: what one holds and reading it back (`reading`), naming, creating, locking and
removing one (`folders`), and going on in one after a stop (`resume`)."""
