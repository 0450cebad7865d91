"""appo: train tool-using reasoning agents with APPO, GRPO and ARPO."""

__version__ = "0.1.0"
