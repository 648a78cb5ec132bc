"""The same training as `cargo bench --bench train`, in scikit-learn, for a same-session baseline.

    kiln data synth ctr --rows 200000 --seed 7 -o /tmp/ctr.csv
    python3 benches/sklearn_baseline.py /tmp/ctr.csv

Features as the Rust benchmark builds them: i1..i8 median-imputed and standardized, c1 and c2
one-hot (with an out-of-vocabulary column each): 120 features. One epoch, batch 256, on the CPU.
Prints rows per second for logistic regression (SGD on log loss) and a 64-32 MLP (Adam).
"""
import csv
import sys
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.neural_network import MLPClassifier

path = sys.argv[1]
with open(path) as f:
    rows = list(csv.DictReader(f))
n = len(rows)
num = np.array([[float(r[f"i{i}"]) if r[f"i{i}"] else np.nan for i in range(1, 9)] for r in rows])
med = np.nanmedian(num, axis=0)
num = np.where(np.isnan(num), med, num)
num = (num - num.mean(axis=0)) / num.std(axis=0)
blocks = [num]
for col in ("c1", "c2"):
    values = sorted({r[col] for r in rows})
    index = {v: i for i, v in enumerate(values)}
    onehot = np.zeros((n, len(values) + 1), dtype=np.float32)
    onehot[np.arange(n), [index[r[col]] for r in rows]] = 1.0
    blocks.append(onehot)
x = np.hstack(blocks).astype(np.float32)
y = np.array([int(r["click"]) for r in rows])
print(f"{n} rows, {x.shape[1]} features")

warnings.simplefilter("ignore", ConvergenceWarning)
for name, fit in [
    ("logistic (SGDClassifier, log loss)", lambda: _sgd()),
    ("mlp 64-32 (MLPClassifier, adam)", lambda: MLPClassifier(hidden_layer_sizes=(64, 32), batch_size=256, max_iter=1, random_state=0).fit(x, y)),
]:
    def _sgd():
        m = SGDClassifier(loss="log_loss", random_state=0)
        for start in range(0, n, 256):
            m.partial_fit(x[start:start + 256], y[start:start + 256], classes=[0, 1])
        return m
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fit()
        best = min(best, time.perf_counter() - t)
    print(f"{name}: {n / best:,.0f} rows/s (best of 3, {best:.3f} s)")
