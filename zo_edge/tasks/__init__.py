"""Classification tasks for prompt-based ZO fine-tuning; importing this package registers the built-in tasks.

    from zo_edge.tasks import get_task
    task = get_task("trec")          # or "rotten-tomatoes", or "user-data" with path=..., text_fields=...

Adding a task: one file with a ``@register_task("name")`` Task subclass, one import line below, one test row in
tests/zo_edge/test_tasks.py.
"""

from zo_edge.tasks import rotten_tomatoes, trec, user_data  # noqa: F401  (registers the tasks)
from zo_edge.tasks.common import (
    BatchIterator,
    Example,
    Task,
    TaskData,
    TaskError,
    TruncationWarning,
    Verbalizer,
    accuracy,
    candidate_batch,
    classification_loss,
    confusion_matrix,
    get_task,
    list_tasks,
    lm_batch,
    macro_f1,
    predict,
    register_task,
)

__all__ = [
    "BatchIterator",
    "Example",
    "Task",
    "TaskData",
    "TaskError",
    "TruncationWarning",
    "Verbalizer",
    "accuracy",
    "candidate_batch",
    "classification_loss",
    "confusion_matrix",
    "get_task",
    "list_tasks",
    "lm_batch",
    "macro_f1",
    "predict",
    "register_task",
]
