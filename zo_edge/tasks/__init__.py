"""Classification tasks for prompt-based ZO fine-tuning; importing this package registers the built-in tasks.

    from zo_edge.tasks import get_task
    task = get_task("trec")          # or "rotten-tomatoes", or "user-data" with path=..., text_fields=...

Adding a task: one file with a ``@register_task("name")`` Task subclass, one import line below, one test row in
tests/zo_edge/test_tasks.py. The data model and registry are ``zo_edge/tasks/base.py``; batching, objectives and
metrics live beside this package (``zo_edge/{batching,objectives,metrics}.py``).
"""

from zo_edge.tasks import rotten_tomatoes, trec, user_data  # noqa: F401  (registers the tasks)
from zo_edge.tasks.base import (
    Example,
    Prompt,
    Task,
    TaskData,
    TaskError,
    Verbalizer,
    get_task,
    list_tasks,
    register_task,
)

__all__ = [
    "Example",
    "Prompt",
    "Task",
    "TaskData",
    "TaskError",
    "Verbalizer",
    "get_task",
    "list_tasks",
    "register_task",
]
