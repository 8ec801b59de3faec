"""``python -m onnxredund``: the console command."""

from onnxredund.cli import run

run()
