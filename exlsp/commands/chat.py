"""`exlsp chat`: chat with the model in the terminal, answers streamed as they are generated."""

from __future__ import annotations

import argparse
import sys

HELP = "chat with the model in the terminal (answers stream as they are generated)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("message", nargs="?", help="ask once and exit (default: interactive; stdin if piped)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument("--max-tokens", type=int, default=512, help="new tokens per answer (default 512)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")


def _answer(engine, history: list[dict[str, str]], args) -> str:
    from engine.request import Priority, SamplingParams
    from exlsp.chat import prompt_text

    prompt = prompt_text(engine.tokenizer, history)
    params = SamplingParams(
        max_new_tokens=args.max_tokens, temperature=args.temperature, priority=Priority.CHAT
    )
    handle = engine.submit(prompt, params)
    try:
        for chunk in handle:
            print(chunk.text, end="", flush=True)
    except KeyboardInterrupt:
        handle.cancel()
        print("\n[stopped]")
    result = handle.result()
    print()
    return result.text


def run(args: argparse.Namespace) -> int:
    from exlsp.chat import chat_messages
    from exlsp.server import open_engine_verbose

    one_shot = args.message
    if one_shot is None and not sys.stdin.isatty():
        one_shot = sys.stdin.read().strip()
    engine = open_engine_verbose("chat", args.model, args.device)
    if engine is None:
        return 1
    try:
        if one_shot:
            _answer(engine, chat_messages(one_shot), args)
            return 0
        history = chat_messages("")[:1]  # the system message
        print("exlsp chat — empty line or Ctrl-D to quit", file=sys.stderr)
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                break
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": _answer(engine, history, args)})
        return 0
    finally:
        engine.close()
