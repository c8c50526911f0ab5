"""Native omni backend: Qwen2.5-Omni (thinker → talker → token2wav) on torch and transformers.

Only `settings` may be imported without torch; everything else loads torch and is imported lazily by
engine.assembly when `--backend omni` is asked for.
"""
