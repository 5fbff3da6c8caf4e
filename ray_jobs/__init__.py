"""Ray entrypoints, run with `ray job submit ... -- python -m ray_jobs.<job> --config FILE [section.key=value ...]`:
build_index (one task per shard), preprocess (Ray Data + shard actors), evaluate, train. Ray is imported only here."""
