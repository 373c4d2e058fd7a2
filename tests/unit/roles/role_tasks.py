"""The role egress's task files as the unit tests read them: one loader and one walk, so that every test that asks
"which task does X" sees the tasks of blocks, rescues and always sections too (test_task_graph.py,
plugins/filter/test_egress_resolver_files.py)."""
import glob
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TASKS = os.path.join(ROOT, "roles", "egress", "tasks")


def load(name):
    """The tasks of tasks/<name> ([] for a file without any)."""
    with open(os.path.join(TASKS, name)) as handle:
        return yaml.safe_load(handle) or []


def walk(tasks):
    """Each task, followed by those of its block, rescue and always, depth first."""
    for task in tasks:
        yield task
        for key in ("block", "rescue", "always"):
            yield from walk(task.get(key) or [])


def every_task():
    """(file name, task) for every task of every task file, the files in order of their names."""
    for path in sorted(glob.glob(os.path.join(TASKS, "*.yml"))):
        name = os.path.basename(path)
        for task in walk(load(name)):
            yield name, task
