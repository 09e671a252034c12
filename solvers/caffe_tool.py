"""The ``caffe`` console command: BVLC Caffe's ``tools/caffe`` brew, spoken over solvers/cli.py.

    caffe train --solver=examples/mnist/lenet_solver.prototxt
    caffe train -solver S [-weights W1,W2 | -snapshot S.solverstate] [-gpu 0] [-iterations N]
    caffe test -model M -weights W [-iterations 50]
    caffe time -model M [-iterations 50]
    caffe device_query -gpu 0

So the commands of Caffe's tutorials run with ``caffe`` in place of
``./build/tools/caffe``. Everything but the usage banner and ``--version``
is ``solvers.cli.main``: the same flags (in gflags' spellings ``-solver S``,
``--solver=S``, ``-solver=S``), messages and exit status as
``tools/solve.py``: 0 on success, 1 for an error (one paragraph on stderr),
2 for bad usage, 130 when aborted by a second Ctrl-C.
"""
import sys

USAGE = """caffe: command line brew (caffe-toolkit, pure Python; not BVLC Caffe's binary)
usage: caffe <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  device_query    show GPU diagnostic information
  time            benchmark model execution time

Flags as in Caffe, e.g. caffe train -solver solver.prototxt; 'caffe --help' lists them all."""


def main(argv=None):
    """Run one ``caffe`` command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-version", "--version"):
        import solvers.caffe as caffe
        print("caffe version %s\n%s" % (caffe.__version__, caffe.toolkit))
        return 0
    if argv[0] in ("-h", "-help", "--help", "help"):
        print(USAGE + "\n")
        argv = ["--help"]
    from solvers.cli import main as cli_main
    return cli_main(argv, prog="caffe")


if __name__ == "__main__":
    sys.exit(main())
