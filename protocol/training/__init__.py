"""Federated training's pure core (issue 19): deterministic, no network, no clock, no OS randomness.

  model.py       architecture, flat float64 weights, safetensors bytes and their SHA-256 digest
  data.py        a node's local training data, parsed and checked; its held-out split
  trainers.py    local training and evaluation (scikit-learn built-ins, `village.trainers` plug-ins)
  optimizers.py  the server step (FedAvg, FedAvgM, FedAdam) every node applies to the agreed mean update
  datasets.py    scikit-learn's bundled data sets and their partitions, for netsim and the benchmarks

scikit-learn is imported inside the functions that use it: importing it costs ~0.7 s, which
villagectl and villaged should not pay for a module they only read a name from, and it pulls in
joblib's asyncio and socket imports, which protocol/'s import check keeps out of every module.
importlib.metadata (installed trainers) is imported where it is used for the same reason: it
imports the email package, which imports socket.
"""
