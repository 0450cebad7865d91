"""A trained agent behind an endpoint: `appo serve` (OpenAI-compatible chat completions that run the whole
tool loop server-side) and `appo chat` (a terminal conversation). See docs/serving.md."""
