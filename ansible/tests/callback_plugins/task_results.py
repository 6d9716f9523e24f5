"""Writes one JSON line per task and handler result to the file named by $TB_TASK_RESULTS, for
apply.sh to ask which task failed, changed or was skipped. The screen output stays the default.
Results of no_log tasks reach callbacks already censored.
"""
import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_results
type: notification
short_description: one JSON line per task result, for the role's apply test
description: Appends name, status, message and stderr of every task result to $TB_TASK_RESULTS.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "task_results"
    CALLBACK_NEEDS_ENABLED = True

    def _write(self, result, status):
        r = result._result
        line = {
            "task": result._task.name,
            "status": "changed" if status == "ok" and r.get("changed") else status,
            "msg": str(r.get("msg", "")),
            "stderr": str(r.get("stderr", "")),
        }
        with open(os.environ["TB_TASK_RESULTS"], "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def v2_runner_on_ok(self, result):
        self._write(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._write(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._write(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._write(result, "failed")
