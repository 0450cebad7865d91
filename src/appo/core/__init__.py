"""Pure tensor math of APPO/GRPO/ARPO: no I/O, no model or engine imports."""
