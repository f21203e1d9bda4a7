"""robuq-bench: speed, memory and model size of the RobuQ engine against PyTorch and onnxruntime, measured in
one run on the machine it runs on (installed as ``robuq.bench``; ``robuq-bench --help``).

  cli.py     the command: runs the measurements below (each in a fresh subprocess) and writes the table,
             ``--json``, the PNG chart and the README's performance section
  worker.py  one measurement per process (so each peak RSS is its own): instruction ceilings, block-linear
             kernels, a whole forward of one runtime, the ONNX export / int8 quantization of a model
  report.py  ratios, targets, the text table, the README section and the chart (PIL; no matplotlib)
"""
