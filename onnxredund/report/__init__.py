"""What a person opens: figures (matplotlib, imported only when a figure is drawn), the self-contained
HTML report, and the writers that put results, CSV tables and figures into an output folder.

Owns: :mod:`.figures`, :mod:`.html` and :mod:`.writers`. May import the analyses (their result
types), :mod:`onnxredund.atomic` and the layers below; never the CLI.
"""
