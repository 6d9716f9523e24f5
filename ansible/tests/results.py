"""Answers apply.sh's questions about one ansible-playbook run, from the JSON lines the
task_results callback wrote:

  results.py FILE changed        how many task results were `changed`
  results.py FILE status TASK    ok | changed | skipped | failed | absent, for the last result
                                 of the task or handler named TASK
  results.py FILE failed         each failed task's name, message and stderr
"""
import json
import sys


def main(path, query, *args):
    with open(path, encoding="utf-8") as f:
        results = [json.loads(line) for line in f]
    if query == "changed":
        print(sum(r["status"] == "changed" for r in results))
    elif query == "status":
        found = [r["status"] for r in results if r["task"] == args[0]]
        print(found[-1] if found else "absent")
    elif query == "failed":
        for r in results:
            if r["status"] == "failed":
                print(f"{r['task']}: {r['msg']}\n{r['stderr']}")
    else:
        sys.exit(f"unknown query {query}")


if __name__ == "__main__":
    main(*sys.argv[1:])
