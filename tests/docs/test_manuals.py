#!/usr/bin/python3
"""Each command's manual page (docs/man/*.scd) and its --help name the same options, and
mosctl's page every one of its commands: a flag added to one and not the other fails."""

import os
import re
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
BUILD = os.environ.get("HOMEWARD_BUILD") or os.path.join(ROOT, "build")
PAGES = os.path.join(ROOT, "docs", "man")
COMMANDS = {"mosrun": ("utils/mosrun", "mosrun.1"), "mosmigrate": ("utils/mosmigrate", "mosmigrate.1"),
            "mosps": ("utils/mosps", "mosps.1"), "mosmon": ("utils/mosmon", "mosmon.1"),
            "mosctl": ("noded/mosctl", "mosctl.8"), "mosnoded": ("noded/mosnoded", "mosnoded.8"),
            "mosmount": ("homefs/mosmount", "mosmount.8")}


def help_text(program, *args):
    result = subprocess.run([program, *args, "--help"], capture_output=True, text=True)
    return result.stdout + result.stderr


def help_options(text):
    """The options of a --help: the first column of every line that starts with a dash."""
    options = set()
    for line in text.splitlines():
        match = re.match(r"^\s+(-\S+)", line)
        if match:
            options.update(match.group(1).split(","))
    return options


def help_subcommands(text):
    section = text.split("Subcommands:", 1)[1] if "Subcommands:" in text else ""
    return {m.group(1) for m in re.finditer(r"^\s+([a-z][a-z-]*)\s{2,}", section, re.M)}


def page_section(text, title):
    match = re.search(rf"^# {title}\n(.*?)(?=^# |\Z)", text, re.M | re.S)
    return match.group(1) if match else ""


def page_terms(section):
    """The terms of a section's definition list: *-x*, *--long* ... at a line's start."""
    terms = set()
    for line in section.splitlines():
        if line.startswith("*"):
            terms.update(re.findall(r"\*(-{1,2}[\w-]+|[a-z][a-z-]*)\*", line.split(" _")[0]))
    return terms


class ManualsTest(unittest.TestCase):
    def page(self, name):
        with open(os.path.join(PAGES, name + ".scd")) as f:
            return f.read()

    def test_every_command_has_a_page_with_the_options_of_its_help(self):
        for command, (binary, page) in COMMANDS.items():
            with self.subTest(command=command):
                program = os.path.join(BUILD, binary)
                text = help_text(program)
                options = help_options(text)
                self.assertIn("--help", options, text)
                if command == "mosctl":
                    for sub in help_subcommands(text):
                        options |= help_options(help_text(program, sub))
                documented = {t for t in page_terms(page_section(self.page(page), "OPTIONS"))
                              if t.startswith("-")}
                self.assertEqual(documented, options, f"{page}.scd OPTIONS vs {command} --help")

    def test_mosctl_page_lists_every_command(self):
        text = help_text(os.path.join(BUILD, "noded", "mosctl"))
        commands = help_subcommands(text)
        self.assertIn("leave", commands, text)
        documented = page_terms(page_section(self.page("mosctl.8"), "COMMANDS"))
        self.assertEqual({t for t in documented if not t.startswith("-")}, commands)

    def test_node_toml_page_names_every_field_the_daemon_reads(self):
        with open(os.path.join(ROOT, "utils", "lib", "config.cc")) as f:
            source = f.read()
        fields = set(re.findall(r'reader\.\w+\("([a-z_]+)\.([a-z_]+)"', source))
        fields |= {("partner", f) for f in re.findall(r'reader\.\w+\(at \+ "([a-z_]+)"', source)}
        self.assertIn(("node", "name"), fields)
        self.assertIn(("partner", "priority"), fields)
        page = self.page("node.toml.5")
        for section, field in sorted(fields):
            with self.subTest(field=f"{section}.{field}"):
                heading = "[[partner]]" if section == "partner" else f"[{section}]"
                self.assertIn(f"*{field}* = ", page_section(page, re.escape(heading)))


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
