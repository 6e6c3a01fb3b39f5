"""Renders templates with Home Assistant's own template environment, as its MQTT integration
does (homeassistant.components.mqtt.models: a state template gets `value`, the payload, and
`value_json`, the payload parsed when it is JSON; a command template gets `value`).

Reads a JSON list of {"template", "payload"} or {"template", "value"} on stdin; writes a JSON
list of {"output", "warnings", "error"}: `warnings` are what Home Assistant would log while
rendering it (an undefined variable, say).

Run with the Python of the Home Assistant venv (tests/common/home_assistant.rs finds it).
"""

import json
import logging
import sys

from homeassistant.helpers.template import TemplateEnvironment


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def main():
    recorder = Recorder()
    logging.getLogger("homeassistant").addHandler(recorder)
    logging.getLogger("homeassistant").propagate = False
    env = TemplateEnvironment(None)
    out = []
    for item in json.load(sys.stdin):
        recorder.records = []
        variables = {}
        if "payload" in item:
            variables["value"] = item["payload"]
            try:
                variables["value_json"] = json.loads(item["payload"])
            except ValueError:
                pass
        if "value" in item:
            variables["value"] = item["value"]
        result = {"output": None, "warnings": [], "error": None}
        try:
            result["output"] = env.from_string(item["template"]).render(**variables)
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            result["error"] = f"{type(e).__name__}: {e}"
        result["warnings"] = list(recorder.records)
        out.append(result)
    json.dump(out, sys.stdout)


main()
