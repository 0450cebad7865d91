"""`appo serve`: an OpenAI-compatible chat-completions endpoint that runs the agent's whole tool loop
server-side and returns the final answer, with the trace of calls and results (docs/serving.md).

    appo serve --model runs/quickstart/final --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "..."}]}'
"""

from __future__ import annotations

import argparse
import logging
import signal

from appo.commands.common import setup_logging, split_preset
from appo.config import Config, load_config, preset_names
from appo.errors import UserError

log = logging.getLogger(__name__)


def add_agent_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Model directory (a checkpoint saved by appo) or built-in name; sets model.path.")
    p.add_argument("--config", help=f"Preset or YAML file for tools, sampling and bounds (default quickstart); "
                                    f"presets: {', '.join(preset_names())}.")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="Dotted config overrides, e.g. tools.call_limit=5 eval.temperature=0.6 serve.deadline=60.")


def agent_config(args: argparse.Namespace, prog: str, extra: dict | None = None) -> Config:
    preset, overrides = split_preset(args.overrides)
    if preset is not None and args.config is not None:
        raise UserError(f"give the config once (--config {args.config} or {preset})")
    flags = {"model.path": args.model, **(extra or {})}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config or preset or "quickstart", overrides)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appo serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_agent_args(p)
    p.add_argument("--host", help="Address to bind (sets serve.host; default 127.0.0.1, loopback only).")
    p.add_argument("--port", type=int, help="TCP port (sets serve.port; default 8000; 0: a free one).")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    setup_logging()
    cfg = agent_config(args, "appo serve", {"serve.host": args.host, "serve.port": args.port})
    from appo.serve.server import AgentServer, ServeLimits
    from appo.serve.setup import engine_choice, load_served

    engine_choice(cfg)  # a bad setting stops here, before anything loads
    limits = ServeLimits(deadline=cfg.serve.deadline, max_request_bytes=cfg.serve.max_request_bytes,
                         queue_size=cfg.serve.queue_size, max_tool_calls=cfg.tools.call_limit)
    try:  # bound before the model loads: a taken port fails at once
        server = AgentServer(limits, host=cfg.serve.host, port=cfg.serve.port)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.serve.host}:{cfg.serve.port}: {e.strerror or e} (serve.host, "
                        "serve.port)") from None
    try:
        served = load_served(cfg)
    except BaseException:
        server.close()
        raise
    # SIGTERM ends the server like Ctrl-C: the tools' sandboxes are closed on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    log.info("model %s on the %s engine, tools: %s, system prompt: %s", served.model_name, served.engine_name,
             ", ".join(served.agent.tools.names), served.prompt_source)
    host = f"[{server.host}]" if ":" in server.host else server.host
    print(f"appo serve: listening on http://{host}:{server.port}/v1 (POST /v1/chat/completions, GET /v1/models; "
          "Ctrl-C stops)", flush=True)
    try:
        server.serve_forever(served.agent, model_name=served.model_name, engine_name=served.engine_name,
                             tool_format=served.tool_format)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        served.close()
    return 0
