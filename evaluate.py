"""Evaluate a classifier's OOD detection: ``python evaluate.py --ckpt PATH`` runs the paper's protocol.

Subcommands (``python evaluate.py SUBCOMMAND --help``; each takes ``--config FILE`` and ``--print_config``):

* ``protocol`` (the default) - per OOD set, tune (T, epsilon) on held-out images and report MSP (baseline) and
  ODIN on the rest; writes table.md, results.json, results.csv, config.yaml, scores/, figures/ and detectors/
  to the output folder, and logs to W&B. Config files: ``configs/evaluate/``.
* ``predict`` - score a folder of images (or a named set) with a saved detector; writes
  ``predictions/<set>.csv``.
* ``analyses RUN_DIR`` - the paper's analyses of a finished protocol run, from its config.yaml and saved scores.
* ``bootstrap RUN_DIR`` - bootstrap intervals of a finished protocol run, from its saved scores (results rewritten).
* ``aggregate RUN_DIR RUN_DIR ... --output DIR`` - mean ± std over evaluations of one setting (e.g. seeds).

This file parses and dispatches; the work is in ``odin_pl.evaluation.run`` (the run), ``odin_pl.evaluation.outputs``
(files), ``odin_pl.evaluation.logs`` (logger), ``odin_pl.analyses`` and ``datamodules.suite`` (the OOD sets).
"""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

if TYPE_CHECKING:  # the entry point imports torch, Lightning and the library only when a subcommand runs
    from datamodules.suite import OODSuite
    from odin_pl.analyses import AnalysisOutput
    from odin_pl.evaluation.options import AnalysesOptions, BootstrapOptions, PredictConfig, ProtocolConfig
    from odin_pl.evaluation.run import EvaluationTarget, ProtocolRun

SUBCOMMANDS = ("protocol", "predict", "analyses", "bootstrap", "aggregate")

# Short spellings, expanded before parsing: Lightning's runtime names (--devices N is --runtime.devices N), the
# protocol's methods, and an in-distribution data set by name (--dataset NAME is --data <its DataModule>).
LIGHTNING_RUNTIME = {flag: f"--runtime.{flag[2:]}" for flag in
                     ("--accelerator", "--devices", "--num_nodes", "--strategy", "--precision")}
SHORTHANDS = {"protocol": {**LIGHTNING_RUNTIME, "--methods": "--tuning.methods", "--params": "--tuning.params"},
              "predict": LIGHTNING_RUNTIME}
DATASET_FLAG = "--dataset"


def _dataset_class_path(name: str) -> str:
    from datamodules.in_distribution import IN_DISTRIBUTION
    from odin_pl.errors import UserError

    if name not in IN_DISTRIBUTION:
        raise UserError(f"unknown in-distribution data set {name!r}; use one of {', '.join(IN_DISTRIBUTION)}")
    cls = IN_DISTRIBUTION[name]
    return f"{cls.__module__}.{cls.__qualname__}"


def expand_shorthands(argv: list[str]) -> list[str]:
    """``argv`` with the subcommand first (``protocol`` when none is given) and the short spellings of
    ``SHORTHANDS`` and ``--dataset NAME`` in their full form."""
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in SUBCOMMANDS else ("protocol", argv)
    shorthands, out, i = SHORTHANDS.get(command, {}), [command], 0
    while i < len(rest):
        flag, equals, value = rest[i].partition("=")
        if flag in shorthands:
            out.append(f"{shorthands[flag]}={value}" if equals else shorthands[flag])
        elif flag == DATASET_FLAG and command in ("protocol", "predict") and (equals or i + 1 < len(rest)):
            if not equals:
                value, i = rest[i + 1], i + 1
            out += ["--data", _dataset_class_path(value)]
        else:
            out.append(rest[i])
        i += 1
    return out


class UserHelp(DefaultHelpFormatter):
    """Help as a user reads it: the docstrings' reST markup (``name``, :class:`Name`) shown as plain text."""

    @staticmethod
    def plain(text: str) -> str:
        return re.sub(r"``([^`]+)``", r"\1", re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text))

    def _expand_help(self, action: Any) -> str:
        return self.plain(super()._expand_help(action))

    def _format_text(self, text: str) -> str:
        return super()._format_text(self.plain(text))

    def start_section(self, heading: str | None) -> None:
        super().start_section(self.plain(heading) if heading else heading)


def _parser(description: str) -> ArgumentParser:
    return ArgumentParser(description=description, formatter_class=UserHelp)


def _config_parser(config_class: type) -> ArgumentParser:
    parser = _parser(config_class.__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config (configs/evaluate/)")
    parser.add_class_arguments(config_class, None)
    return parser


def _subparser(name: str) -> ArgumentParser:
    """The parser of one subcommand (built only for the subcommand that runs: it imports the library)."""
    from odin_pl.evaluation.options import AnalysesOptions, BootstrapOptions, PredictConfig, ProtocolConfig

    if name in ("protocol", "predict"):
        return _config_parser(ProtocolConfig if name == "protocol" else PredictConfig)
    parser = _parser(HELPS[name])
    if name == "aggregate":
        parser.add_argument("run_dirs", nargs="+", type=str, help="two or more protocol output folders (results.json)")
        parser.add_argument("--output", type=str, required=True, help="where aggregate.json and aggregate.md go")
        parser.add_argument("--logger", type=bool, default=True, help="log the aggregate as a run (W&B, else CSV)")
        return parser
    parser.add_argument("run_dir", type=str, help="the protocol's output folder (config.yaml, scores/)")
    if name == "analyses":
        parser.add_class_arguments(AnalysesOptions, "analyses")
        parser.add_argument("--accelerator", type=str | None, default=None, help="override the run's accelerator")
    else:
        parser.add_class_arguments(BootstrapOptions, "bootstrap")
    return parser


HELPS = {"protocol": "the paper's protocol (the default): tune on held-out images, report the rest",
         "predict": "score images with a saved detector",
         "analyses": "the paper's analyses of a finished protocol run",
         "bootstrap": "bootstrap intervals of a finished protocol run, from its saved scores",
         "aggregate": "mean ± std over finished evaluations of one setting (e.g. training seeds)"}


def build_parser(commands: tuple[str, ...] = SUBCOMMANDS) -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """``evaluate.py protocol | predict | analyses | bootstrap | aggregate``, built from the typed groups of
    ``odin_pl.evaluation.options``; and the parser of each subcommand in ``commands`` (the others stand in with
    their description only, so that ``evaluate.py --help`` imports nothing heavy)."""
    parser = ArgumentParser(prog="evaluate.py", formatter_class=UserHelp,
                            description="OOD detection with ODIN. Without a subcommand, evaluate.py runs protocol "
                            "(evaluate.py --ckpt PATH). An error is one line; add --debug for its traceback.")
    subparsers = {name: _subparser(name) if name in commands else _parser(HELPS[name]) for name in SUBCOMMANDS}
    subcommands = parser.add_subcommands(required=False, dest="command")  # expand_shorthands gives protocol
    for name, subparser in subparsers.items():
        subcommands.add_subcommand(name, subparser, help=HELPS[name])
    return parser, subparsers


def _prepare_data(options: Namespace) -> None:
    """A top-level ``data_root`` reaches an explicitly given DataModule that sets none itself."""
    data = options.get("data")
    if options.get("data_root") and isinstance(data, Namespace) and "init_args" in data \
            and data.init_args.get("data_root", "absent") is None:
        data.init_args.data_root = options.data_root


def _resolve_paths(options: Namespace, out: Path) -> Namespace:
    """A copy whose paths are absolute, so that the saved config works from any folder."""
    saved = options.clone()
    for key in ("ckpt", "weights", "data_root"):
        if saved.get(key):
            saved[key] = str(Path(saved[key]).expanduser().resolve())
    data = saved.get("data")
    if isinstance(data, Namespace) and data.get("init_args") and data.init_args.get("data_root"):
        data.init_args.data_root = str(Path(data.init_args.data_root).expanduser().resolve())
    saved.output.dir = str(out.resolve())
    saved.pop("config", None)
    return saved


def _typed(config_class: type, instantiated: Namespace) -> Any:
    return config_class(**{f.name: instantiated[f.name] for f in fields(config_class)})


def _suite(config: ProtocolConfig, target: EvaluationTarget) -> OODSuite:
    from datamodules.suite import build_ood_suite
    from odin_pl.distributed import world
    from odin_pl.evaluation.options import NOISE_TUNING_SET

    suite = build_ood_suite(config.ood.sets, target.datamodule.default_ood_sets, target.spec,
                            target.datamodule.data_root, config.seed, config.ood.num_images, config.ood.download,
                            noise_tuning=config.tuning.tune_on == NOISE_TUNING_SET, exclude=[config.output_dir])
    if world()[0] == 0:
        for name, why in suite.skipped.items():
            print(f"Skipping OOD set {name!r}: not available ({why})")
    return suite


def protocol(config: ProtocolConfig, resolved_config: str = "", *, may_start_processes: bool = False
             ) -> ProtocolRun:
    """Run the protocol on this process's share and, on process 0, write, print and log its results; returns the
    run (on every process). ``resolved_config`` (YAML) is saved as ``config.yaml`` in the output folder once the
    model and data have loaded, before any scoring. ``may_start_processes``: see
    :func:`odin_pl.evaluation.runtime.start_processes` (true on the command line)."""
    from odin_pl.errors import UserError
    from odin_pl.evaluation.api import evaluate_target
    from odin_pl.evaluation.logs import log_run
    from odin_pl.evaluation.outputs import write_config
    from odin_pl.evaluation.run import load_target
    from odin_pl.evaluation.runtime import start_processes

    replacing = config.check_output_dir()
    fabric = start_processes(config.runtime, may_start_processes=may_start_processes)
    if replacing and fabric.global_rank == 0:
        print(replacing)
    if config.analyses.names and fabric.world_size > 1:
        raise UserError(f"the analyses run in a single process, this run has {fabric.world_size}: run them later "
                        "with `evaluate.py analyses RUN_DIR`")
    target = load_target(config)
    if config.tuning.odin_mode is None:  # OpenOOD's protocol alone
        if resolved_config and fabric.global_rank == 0:
            write_config(config.output_dir, resolved_config)
        return _openood(config, target, fabric.device, config.output_dir)
    suite = _suite(config, target)
    evaluation = evaluate_target(config, target, suite.datasets, device=fabric.device, sources=suite.sources,
                                 tuning_only=suite.tuning_only, skipped=list(suite.skipped),
                                 resolved_config=resolved_config)
    run = evaluation.run
    if config.tuning.openood:  # the second protocol on the same model, in its own folder
        _openood(config, target, fabric.device, config.output_dir / "openood")
    if fabric.global_rank > 0:
        return run
    out = config.output_dir
    files = evaluation.save(out)
    print(run.table)
    for note in run.result.notes:
        print(f"Note: {note}")
    if run.reused_score_files:
        print(f"Resumed: reused {len(run.reused_score_files)} saved score file(s): "
              f"{', '.join(run.reused_score_files)}")
    if run.fits is not None and run.fits.reused:
        print(f"Resumed: reused the saved fit(s) of {', '.join(run.fits.reused)} ({out / 'fits'})")
    print(f"Results: {', '.join(map(str, files.results))}; figures in {out / 'figures'}; detectors: "
          f"{', '.join(map(str, files.detectors))}")
    if files.removed:
        print(f"Removed {len(files.removed)} detector file(s) and figure(s) of an earlier run in {out}: "
              f"{', '.join(p.name for p in files.removed)}")
    analyses = _run_analyses(run, target, suite)
    if config.output.logger and (where := log_run(out, run, files, analyses)):
        print(where)
    return run


def _openood(config: ProtocolConfig, target: EvaluationTarget, device: Any, out: Path) -> ProtocolRun:
    """OpenOOD v1.5's protocol on ``--openood.benchmark`` under the data root; process 0 writes its files (the
    method table and OpenOOD's tables in ``table.md``), prints and logs them."""
    from datamodules.openood_benchmarks import build_openood_suite
    from odin_pl.distributed import world
    from odin_pl.evaluation.logs import log_run
    from odin_pl.evaluation.outputs import write_run
    from odin_pl.evaluation.run import evaluate_openood

    fitted = any(grid.method.needs_fit for grid in config.tuning.openood_plan(config.seed).methods)
    suite = build_openood_suite(config.openood.benchmark, config.data_root or target.datamodule.data_root,
                                target.spec, config.openood.download, train=fitted, csid=False,
                                folders=config.openood.folders, image_roots=config.openood.image_roots)
    run = evaluate_openood(config, target, suite.sets(), out, device=device)
    if world()[0] == 0:
        files = write_run(run, target.model, out)
        print(run.table)
        for note in run.result.notes:
            print(f"Note: {note}")
        print(f"OpenOOD results: {', '.join(map(str, files.results))}")
        if config.output.logger and (where := log_run(out, run, files, {})):
            print(where)
    return run


def _run_analyses(run: ProtocolRun, target: EvaluationTarget, suite: OODSuite) -> dict[str, AnalysisOutput]:
    from odin_pl.analyses import run_analyses
    from odin_pl.evaluation.run import analysis_context

    outputs = run_analyses(run.config.analyses.names, analysis_context(run, target, suite.datasets))
    if outputs:
        print(f"Analyses ({', '.join(outputs)}): {run.config.output_dir / 'analyses'}")
    return outputs


def analyses(run_dir: Path, options: AnalysesOptions, accelerator: str | None,
             protocol_parser: ArgumentParser) -> dict[str, AnalysisOutput]:
    """The analyses of a finished run, as with ``protocol --analyses.names``."""
    run, target, suite = _finished_run(run_dir, protocol_parser, accelerator, analyses=options)
    return _run_analyses(run, target, suite)


def bootstrap(run_dir: Path, options: BootstrapOptions, protocol_parser: ArgumentParser) -> list[Path]:
    """Bootstrap intervals of a finished run: results.json, results.csv and table.md written again with them."""
    from odin_pl.errors import UserError
    from odin_pl.evaluation.logs import update_run
    from odin_pl.report.tables import write_results

    if not options.resamples:
        raise UserError("--bootstrap.resamples 0 computes no interval: give the number of resamples (e.g. 1000)")
    run, _, _ = _finished_run(run_dir, protocol_parser, bootstrap=options)
    paths = write_results(run_dir, run.result.records, run.meta, run.table)
    print(run.table)
    print(f"Intervals ({options.resamples} paired resamples per set): {', '.join(map(str, paths))}")
    if run.config.output.logger and (where := update_run(run_dir, run)):
        print(where)
    return paths


def aggregate(run_dirs: list[str], output: Path, logger: bool = True) -> dict[str, Any]:
    """Mean and sample standard deviation of every metric over finished evaluations of one setting."""
    from odin_pl.evaluation.aggregate import aggregate_runs, aggregate_table
    from odin_pl.evaluation.logs import log_aggregate
    from odin_pl.tracking.loggers import LoggerOptions

    result = aggregate_runs(run_dirs, output)
    print(aggregate_table(result))
    print(f"Aggregate of {result['n_runs']} evaluations: {output / 'aggregate.json'}, {output / 'aggregate.md'}")
    if logger and (where := log_aggregate(output, result, LoggerOptions())):
        print(where)
    return result


def _finished_run(run_dir: Path, protocol_parser: ArgumentParser, accelerator: str | None = None,
                  **groups: Any) -> tuple[ProtocolRun, EvaluationTarget, OODSuite]:
    """A finished run again, in one process: its config.yaml (option ``groups`` replaced) and its saved scores
    give the protocol's result (nothing is scored)."""
    import yaml

    from odin_pl.errors import MissingFileError
    from odin_pl.evaluation.options import SAVED_CONFIG, ProtocolConfig
    from odin_pl.evaluation.run import evaluate_protocol, load_target
    from odin_pl.evaluation.runtime import start_processes

    saved = run_dir / SAVED_CONFIG
    if not saved.is_file():
        raise MissingFileError(f"{saved} does not exist: give the output folder of a finished protocol run "
                               "(it holds config.yaml, results.json and scores/)")
    options_ns = protocol_parser.parse_object(yaml.safe_load(saved.read_text()))
    options_ns.output.dir = str(run_dir)
    options_ns.runtime.devices, options_ns.runtime.num_nodes, options_ns.runtime.strategy = 1, 1, "auto"
    if accelerator is not None:
        options_ns.runtime.accelerator = accelerator
    config = _typed(ProtocolConfig, protocol_parser.instantiate(options_ns))
    for name, value in groups.items():
        setattr(config, name, value)
    fabric = start_processes(config.runtime, may_start_processes=False)
    target = load_target(config)
    suite = _suite(config, target)
    run = evaluate_protocol(config, target, suite.datasets, device=fabric.device, sources=suite.sources,
                            tuning_only=suite.tuning_only, skipped=list(suite.skipped), saved_scores_only=True)
    return run, target, suite


def predict(config: PredictConfig, *, may_start_processes: bool = False) -> Path:
    """Score every image of ``config.images`` with a saved detector (each process its share; process 0 writes the
    CSV); returns the CSV's path."""
    from datamodules.image_folder import ImageFolderDataset
    from datamodules.ood import build_ood_dataset, ood_set_name
    from odin_pl.deploy.detector import Detector
    from odin_pl.deploy.prediction import detect_dataset, write_detections
    from odin_pl.errors import NonFiniteScoresError
    from odin_pl.evaluation.run import load_target
    from odin_pl.evaluation.runtime import start_processes
    from odin_pl.files import named_file
    from odin_pl.fingerprint import file_sha256

    fabric = start_processes(config.runtime, may_start_processes=may_start_processes)
    target = load_target(config)
    target.model.to(device=fabric.device, dtype=config.runtime.dtype)
    detector = Detector.load(config.detector, target.model, weights_sha256=file_sha256(target.weights_file),
                             allow_other_weights=config.allow_other_weights)
    spec = target.spec
    dataset = build_ood_dataset(config.images, spec, target.datamodule.data_root, config.seed, config.num_images,
                                exclude=[config.output_folder])
    csv_path = named_file(config.output_folder / "predictions", f"{ood_set_name(config.images)}.csv")
    try:
        detections = detect_dataset(detector, dataset, batch_size=config.runtime.batch_size,
                                    num_workers=config.runtime.num_workers)
    except NonFiniteScoresError as err:
        raise NonFiniteScoresError(f"{target.weights_file}: {err}") from err
    if fabric.global_rank == 0:
        paths = [str(p) for p, _ in dataset.samples] if isinstance(dataset, ImageFolderDataset) else None
        write_detections(csv_path, detections, detector.method.name, paths, spec.class_names)
        print(f"Predictions for {len(dataset)} images ({ood_set_name(config.images)}): {csv_path}")
    return csv_path


def main(argv: list[str] | None = None) -> ProtocolRun | Path | dict[str, AnalysisOutput] | list[Path] | dict:
    """Parse ``argv`` (default: the command line) and run its subcommand (``protocol`` when none is given).

    Only with the command line (``argv`` None) may a run with several processes start them itself.
    """
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):  # the overview: no subcommand's parser, nothing heavy imported
        build_parser(())[0].parse_args(argv)
    from odin_pl.cli_errors import one_line_parse_errors
    from odin_pl.errors import without_debug_flag
    from odin_pl.evaluation.options import PredictConfig, ProtocolConfig

    argv = expand_shorthands(without_debug_flag(argv))
    parser, subparsers = build_parser((argv[0], "protocol"))
    with one_line_parse_errors(parser):
        parsed = parser.parse_args(argv)
    command = parsed.command
    options, subparser = parsed[command], subparsers[command]
    if command == "analyses":
        return analyses(Path(options.run_dir), subparser.instantiate(options).analyses, options.accelerator,
                        subparsers["protocol"])
    if command == "bootstrap":
        return bootstrap(Path(options.run_dir), subparser.instantiate(options).bootstrap, subparsers["protocol"])
    if command == "aggregate":
        return aggregate(options.run_dirs, Path(options.output), options.logger)
    _prepare_data(options)
    config_class = ProtocolConfig if command == "protocol" else PredictConfig
    config = _typed(config_class, subparser.instantiate(options))
    if command == "predict":
        return predict(config, may_start_processes=from_command_line)
    return protocol(config, subparser.dump(_resolve_paths(options, config.output_dir)),
                    may_start_processes=from_command_line)


def run_command_line() -> int:
    """``main()`` for the shell: a user error (``odin_pl.errors.UserError``) ends in one line on stderr and
    exit status 2 (its traceback with ``--debug``); any other exception is a bug and keeps its traceback. In a run
    of several processes, a process whose collective failed because a peer stopped (``PeerFailedError``) ends
    with one line and status 1; a process's own RuntimeError is its own error."""
    try:
        main()
    except Exception as err:
        from odin_pl.errors import PeerFailedError, UserError, report_user_error

        if isinstance(err, UserError):
            return report_user_error("evaluate.py", err, sys.argv[1:], process=_process_label())
        if not isinstance(err, PeerFailedError):
            raise
        print(f"evaluate.py: error{_process_label()}: stopped because another process of the run failed (see its "
              f"message): {err}", file=sys.stderr)
        return 1
    return 0


def _process_label() -> str:
    from odin_pl.distributed import world

    rank, world_size = world()
    return f" (process {rank} of {world_size})" if world_size > 1 else ""


if __name__ == "__main__":
    sys.exit(run_command_line())
