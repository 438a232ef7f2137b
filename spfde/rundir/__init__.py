"""A run directory's files, safe against kills and other processes.

- `checkpoint`: atomic writes, the checkpoint (with its checksum), `summary.json`, `metrics.jsonl`,
  archiving earlier results.
- `lifecycle`: the directory's lock, `fresh=true`, the settings fingerprint, stop signals, divergence.

May import only `spfde.config` and `spfde.errors`; nothing here imports torch when it loads (`spfde.status`
and `spfde.report` read run directories without it).
"""
