"""The house rules a reader and a copier rely on: `losses.py` works alone, copied into an empty
folder, and the project's modules import one another without a circle."""
import ast
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A script run next to a lone copy of losses.py: SILog, P^T, CKD, VRKD and the objective.
COPY_CHECK = """
import sys
import torch
import losses
assert sys.modules["losses"].__file__.startswith(sys.argv[1]), "imported the project's losses.py, not the copy"
assert set(sys.modules) & {"teacher", "model", "cli", "rig", "kd_baselines"} == set()
gen = torch.Generator().manual_seed(0)
b, n, k, h, w = 1, 6, 8, 8, 12
target = torch.where(torch.rand(b, n, 1, h, w, generator=gen) < 0.3, 1 + 20 * torch.rand(b, n, 1, h, w, generator=gen),
                     torch.zeros(b, n, 1, h, w))
mask = losses.valid_mask(target, 0.1, 80.0)
assert float(losses.silog(target, target, mask)) < 1e-4
probs = losses.teacher_bin_probs(torch.rand(b, n, 1, h, w, generator=gen), k)
assert torch.allclose(probs.sum(dim=2), torch.ones(b, n, h, w))
logits, centers = torch.randn(b, n, k, h // 2, w // 2, generator=gen), torch.linspace(1, 40, k).expand(b, n, k)
ckd = losses.cross_interaction_kd(logits, centers, probs, target, mask)
feats = torch.randn(b, n, 16, h, w, generator=gen)
pairs = [(i, (i + 1) % n) for i in range(n)]
vr = losses.view_relational_kd(feats, feats, pairs)
assert float(vr) < 1e-5 and float(ckd["kd"]) > 0 and float(ckd["cross"]) > 0
out = {"depth": 1 + 20 * torch.rand(b, n, 1, h, w, generator=gen), "logits": logits, "centers": centers,
       "features": feats}
tokens = losses.border_tokens(feats)
loss, terms = losses.objective(out, target, losses.LossConfig(pairs=pairs, min_depth=0.1, max_depth=80.0),
                               torch.rand(b, n, 1, h, w, generator=gen), tokens)
assert set(terms) == {"si", "bins", "kd", "cross", "vr"} and torch.isfinite(loss)
print("ok")
"""


def test_losses_py_copied_alone_runs_every_loss_of_the_method(tmp_path):
    shutil.copy(os.path.join(ROOT, "losses.py"), tmp_path / "losses.py")
    (tmp_path / "check.py").write_text(COPY_CHECK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "check.py", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def project_imports():
    """{module: set of project modules it imports}, counting imports inside functions too, for every
    .py file at the root and in benchmarks/ (a module of benchmarks/ is named 'benchmarks.NAME')."""
    files = {name[:-3]: os.path.join(ROOT, name) for name in os.listdir(ROOT) if name.endswith(".py")}
    files.update({f"benchmarks.{name[:-3]}": os.path.join(ROOT, "benchmarks", name)
                  for name in os.listdir(os.path.join(ROOT, "benchmarks")) if name.endswith(".py")})
    graph = {}
    for module, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[module] = {name for name in found if name in files and name != module}
    return graph


def test_the_import_graph_has_no_circle():
    graph = project_imports()
    assert graph["train"] >= {"losses", "model"} and "benchmarks.zeroshot" in graph["benchmarks.ablation"]
    state, path = {}, []

    def visit(module):  # depth-first search; a module met again while still on the path closes a circle
        state[module] = "open"
        path.append(module)
        for nxt in sorted(graph[module]):
            assert state.get(nxt) != "open", "import circle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_losses_imports_only_torch_and_the_standard_library():
    tree = ast.parse(open(os.path.join(ROOT, "losses.py")).read())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots <= {"torch", "math", "dataclasses", "typing", "__future__"}, roots
