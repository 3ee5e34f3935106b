"""`wsrl <command>`: parses flags with tyro over the defaults they choose, calls the library. No
logic of its own: where each default comes from is `wsrl.defaults.run_defaults`.
"""

from __future__ import annotations

import sys
from typing import get_args

import tyro

from wsrl.checkpoint import Checkpoint, load_checkpoint
from wsrl.config import Algo, FinetuneConfig, OnlineAlgo, PretrainConfig, RecipeName
from wsrl.errors import DivergenceError, UserError
from wsrl.precision import Precision

USAGE = """usage: wsrl <command> [flags]   (wsrl <command> --help lists every flag)

commands:
  pretrain   offline pretraining (CQL, Cal-QL, IQL) on a dataset -> checkpoint
  finetune   online fine-tuning from a checkpoint (WSRL: warmup, fresh buffer, ensemble SAC)
  collect    roll out a policy (checkpoint, shipped, random) or a replay buffer -> D4RL HDF5 / Minari dataset
  plot       learning curves (normalised score vs steps, offline + online) of runs -> PNG
  sweep      envs x methods x seeds as Ray tasks on this machine or a cluster; reruns skip finished runs
  report     metrics per env x method, IQM/median/mean/optimality gap with bootstrap CIs -> Markdown, CSV, PNG
  evaluate   return, normalised score (and success rate) of a run, checkpoint or shipped policy; --video
  export     a run's deterministic actor as ONNX or a torch.export .pt2 file that runs without wsrl
"""


def _peek(args: list[str], flag: str) -> str:
    """The value of ``--flag`` on the command line (last one wins), or ''. Only for the flags that
    choose the defaults the others are parsed over (--recipe, --algo, --online-algo, --env,
    --checkpoint, --resume) and for checking a choice before tyro's longer message."""
    value = ""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value and value not in choices:
        raise UserError(f"{flag}: unknown value '{value}' (choose from {', '.join(choices)})")


def _parse(cls: type, default, args: list[str], command: str):
    return tyro.cli(cls, default=default, args=args, prog=f"wsrl {command}",
                    config=(tyro.conf.OmitArgPrefixes,))


def parse_pretrain(args: list[str]) -> PretrainConfig:
    from wsrl.defaults import run_defaults

    algo, recipe = _peek(args, "--algo"), _peek(args, "--recipe")
    _check_choice("--algo", algo, get_args(Algo))
    _check_choice("--recipe", recipe, get_args(RecipeName))
    _check_choice("--precision", _peek(args, "--precision"), get_args(Precision))
    default = run_defaults("pretrain", _peek(args, "--env"), recipe, algo, _peek(args, "--resume"))
    return _parse(PretrainConfig, default, args, "pretrain")


def read_finetune(args: list[str]) -> tuple[FinetuneConfig, Checkpoint | None]:
    """The config of ``wsrl finetune args`` and the checkpoint --checkpoint names, read once: its
    saved config gives defaults here, and the run starts from it (``finetune(cfg, pretrained)``).
    A resumed run takes its defaults from its own config.json instead."""
    from wsrl.defaults import run_defaults

    online_algo, recipe = _peek(args, "--online-algo"), _peek(args, "--recipe")
    _check_choice("--online-algo", online_algo, get_args(OnlineAlgo))
    _check_choice("--recipe", recipe, get_args(RecipeName))
    _check_choice("--precision", _peek(args, "--precision"), get_args(Precision))
    resume, checkpoint = _peek(args, "--resume"), _peek(args, "--checkpoint")
    pretrained = load_checkpoint(checkpoint) if checkpoint and not resume else None
    default = run_defaults("finetune", _peek(args, "--env"), recipe, online_algo, resume, pretrained)
    return _parse(FinetuneConfig, default, args, "finetune"), pretrained


def parse_finetune(args: list[str]) -> FinetuneConfig:
    return read_finetune(args)[0]


def parse_collect(args: list[str]):
    from wsrl.collect import CollectConfig

    _check_choice("--format", _peek(args, "--format"), ("d4rl", "minari"))
    return _parse(CollectConfig, CollectConfig(), args, "collect")


def parse_plot(args: list[str]):
    from wsrl.plot import PlotConfig

    return tyro.cli(PlotConfig, args=args, prog="wsrl plot", config=(tyro.conf.OmitArgPrefixes,))


def parse_sweep(args: list[str]):
    from wsrl.config import SweepConfig

    return tyro.cli(SweepConfig, args=args, prog="wsrl sweep", config=(tyro.conf.OmitArgPrefixes,))


def parse_report(args: list[str]):
    from wsrl.config import ReportConfig

    return tyro.cli(ReportConfig, args=args, prog="wsrl report", config=(tyro.conf.OmitArgPrefixes,))


def _finetune(parsed: tuple[FinetuneConfig, Checkpoint | None]) -> dict[str, float]:
    from wsrl.online import finetune

    return finetune(*parsed)


def _sweep(cfg) -> int:
    from wsrl.sweep import sweep

    return sweep(cfg)  # prints its own progress and summary; the exit status says whether every run finished


def _report(cfg) -> None:
    from wsrl.report import report

    print(f"wsrl report: wrote {report(cfg)}")


def parse_evaluate(args: list[str]):
    from wsrl.config import EvaluateConfig

    _check_choice("--precision", _peek(args, "--precision"), get_args(Precision))
    return tyro.cli(EvaluateConfig, args=args, prog="wsrl evaluate", config=(tyro.conf.OmitArgPrefixes,))


def parse_export(args: list[str]):
    from wsrl.config import ExportConfig

    _check_choice("--format", _peek(args, "--format"), ("onnx", "pt2", "policy"))
    return tyro.cli(ExportConfig, args=args, prog="wsrl export", config=(tyro.conf.OmitArgPrefixes,))


def _evaluate(cfg) -> None:
    from wsrl.evaluate import evaluate_policy, summary_line

    print(summary_line(cfg, evaluate_policy(cfg)))


def _export(cfg) -> None:
    from wsrl.policies import export

    print(f"wsrl export: wrote {export(cfg)}")


def _collect(cfg) -> None:
    from wsrl.collect import collect

    collect(cfg)  # prints its own summary


def _plot(cfg) -> None:
    from wsrl.plot import plot

    print(f"wsrl plot: wrote {plot(cfg)}")


def main(argv: list[str] | None = None) -> int:
    from wsrl.train import pretrain

    argv = sys.argv[1:] if argv is None else argv
    commands = {"pretrain": (parse_pretrain, pretrain), "finetune": (read_finetune, _finetune),
                "collect": (parse_collect, _collect), "plot": (parse_plot, _plot),
                "sweep": (parse_sweep, _sweep), "report": (parse_report, _report),
                "evaluate": (parse_evaluate, _evaluate), "export": (parse_export, _export)}
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in commands:
        print(f"wsrl: error: unknown command '{command}'\n{USAGE}", file=sys.stderr)
        return 2
    parse, run = commands[command]
    try:
        result = run(parse(args))
    except UserError as e:
        print(f"wsrl {command}: error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"wsrl {command}: training stopped: {e}; the last good checkpoint is kept", file=sys.stderr)
        return 3
    if isinstance(result, int):
        return result
    if result:
        print(f"wsrl {command}: done; final evaluation " + ", ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
