#!/usr/bin/env python3
"""Rewrite README.md's chapter table from onefchainer.py's chapter headers,
and the numbers of its compatibility table from what onefchainer provides.

    python3 docs/chapters.py           # rewrite the table in README.md
    python3 docs/chapters.py --check   # only say whether it is up to date (exit 1 if not)

onefchainer.py opens each chapter with a header between two rules,

    # =============================================================================
    # Chapter 9. More functions
    # =============================================================================

and each part with a banner between two rules of '#' (`# PART II. THE LIBRARY`);
Part I closes with a rule and `# END OF PART I.`.  The table between the
markers `<!-- chapters: ... -->` and `<!-- /chapters -->` in README.md gets each
chapter's line range (from the rule above its title to its last non-blank
line) and title from the file; the third column, what the chapter teaches, is
written by hand and kept (found by the chapter's title, else its number).  The
sentence under the table gives the figures that move with every edit: where
Part I ends and how long the core (Variable, Function, _backprop) is.  A test
fails while the table does not match the file.
"""
import ast
import os
import re
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCE = os.path.join(ROOT, 'onefchainer.py')
README = os.path.join(ROOT, 'README.md')
BEGIN = '<!-- chapters: python3 docs/chapters.py writes this table; edit only "what it teaches" -->'
END = '<!-- /chapters -->'
HEADER = '| lines | chapter | what it teaches |\n|---|---|---|\n'


def outline(source):
    """The parts and chapters of the source text, in order: dicts with kind
    ('part' or 'chapter'), number (the roman or arabic numeral as written),
    title, first and last (1-based lines).  A part runs from its banner to
    the next part's; a chapter from the rule above its title to its last
    non-blank line before the next chapter, part or END OF PART marker."""
    lines = source.split('\n')
    found, stops = [], []          # stops: where a chapter's text ends at the latest

    def rule(index, mark):
        return 0 <= index < len(lines) and re.fullmatch(r'# {}{{20,}}'.format(mark), lines[index])

    for i, line in enumerate(lines):
        chapter = re.fullmatch(r'# Chapter (\d+)\. (.+)', line)
        part = re.fullmatch(r'# PART ([IVX]+)\. (.+)', line)
        if chapter and rule(i - 1, '=') and rule(i + 1, '='):
            found.append(dict(kind='chapter', number=chapter.group(1),
                              title=chapter.group(2), first=i))
            stops.append(i - 1)
        elif part and rule(i - 1, '#') and rule(i + 1, '#'):
            found.append(dict(kind='part', number=part.group(1),
                              title=part.group(2).capitalize(), first=i))
            stops.append(i - 1)
        elif line.startswith('# END OF PART') and rule(i - 1, '='):
            stops.append(i - 1)
    stops.append(len(lines))

    for entry in found:
        start = entry['first']                    # the title's index, 0-based
        if entry['kind'] == 'chapter':
            limits = [stop for stop in stops if stop > start]
        else:                                     # a part ends where the next one begins
            limits = [other['first'] - 1 for other in found
                      if other['kind'] == 'part' and other['first'] > start] + [len(lines)]
        last = min(limits)                        # the index after the chapter's text
        while last > start and not lines[last - 1].strip():
            last -= 1
        entry['first'] = start                    # the rule above: 1-based = index
        entry['last'] = last                      # 1-based number of the last line
    return found


def core_figures(source):
    """(code lines, last line) of the core: the first top-level definitions of
    Variable, Function and _backprop, counting lines that are neither blank,
    comments nor docstrings (as the Part I budget test counts them)."""
    lines = source.split('\n')
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, 'body', None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    core = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and \
                node.name in ('Variable', 'Function', '_backprop'):
            core.setdefault(node.name, node)
    code = sum(1 for node in core.values()
               for number in range(node.lineno, node.end_lineno + 1)
               if lines[number - 1].strip() and not lines[number - 1].strip().startswith('#')
               and number not in docstrings)
    return code, max(node.end_lineno for node in core.values())


def _teaches(block):
    """{chapter title: what it teaches} and {chapter number: ...} of a table."""
    by_title, by_number = {}, {}
    for line in block.split('\n'):
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if len(cells) == 3:
            chapter = re.fullmatch(r'(\d+)\. (.+)', cells[1])
            if chapter:
                by_number[chapter.group(1)] = cells[2]
                by_title[chapter.group(2)] = cells[2]
    return by_title, by_number


def table(source, old_block=''):
    """The text between the markers for this source, keeping the third column
    of old_block."""
    by_title, by_number = _teaches(old_block)
    rows = []
    for entry in outline(source):
        lines = '{}–{}'.format(entry['first'], entry['last'])
        if entry['kind'] == 'part':
            rows.append('| {} | **Part {}. {}** | |'.format(lines, entry['number'], entry['title']))
        else:
            teaches = by_title.get(entry['title'], by_number.get(entry['number'], ''))
            rows.append('| {} | {}. {} | {} |'.format(lines, entry['number'], entry['title'],
                                                     teaches).rstrip())
    end_of_part_one = next(number for number, line in enumerate(source.split('\n'), 1)
                           if line.startswith('# END OF PART I.'))
    code, core_end = core_figures(source)
    figures = ('`END OF PART I` is line {:,}. The core (`Variable`, `Function`, `_backprop`) '
               'is {} lines of code and ends at line {}.'.format(end_of_part_one, code, core_end))
    return '\n\n' + HEADER + '\n'.join(rows) + '\n\n' + textwrap.fill(figures, 95) + '\n\n'


def updated(readme, source):
    """README text with the chapter table rewritten for this source."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError('README.md must hold {} and {} once each'.format(BEGIN, END))
    head, rest = readme.split(BEGIN)
    old_block, tail = rest.split(END)
    return head + BEGIN + table(source, old_block) + END + tail


def compatibility_counts():
    """{module ('' for chainer itself, 'total'): [Chainer's names, provided,
    out of scope, not yet]}, from Chainer 7.8.1's names
    (testdata/chainer781/public_names.json) and what onefchainer answers for each."""
    import importlib
    import json
    sys.path.insert(0, ROOT)
    import onefchainer
    with open(os.path.join(ROOT, 'testdata', 'chainer781', 'public_names.json')) as f:
        names = json.load(f)['modules']
    counts = {}
    for module, chainer_names in names.items():
        imported = importlib.import_module('onefchainer' + ('.' + module if module else ''))
        row = [len(chainer_names), 0, 0, 0]
        for name in chainer_names:
            try:
                getattr(imported, name)
                row[1] += 1
            except onefchainer.NotSupportedError:
                key = imported._not_supported_reasons.get(name, imported._not_supported_default)
                row[3 if key == 'missing' else 2] += 1
        counts[module] = row
    counts['total'] = [sum(row[i] for row in counts.values()) for i in range(4)]
    return counts


def with_counts(readme, counts):
    """README text with the numbers of its compatibility table (module by
    module) set to `counts`; the words after each number are kept."""
    start = readme.index('| module | Chainer names |')
    end = readme.index('\n\n', start)
    rows = readme[start:end].split('\n')
    for i, line in enumerate(rows[2:], 2):
        cells = line.strip().strip('|').split('|')
        name = re.search(r'`chainer((?:\.\w+)*)`|\*\*(total)\*\*', cells[0])
        module = name.group(2) or name.group(1)[1:]
        for column in range(1, 5):
            cells[column] = re.sub(r'\d+', str(counts[module][column - 1]), cells[column], 1)
        rows[i] = '|' + '|'.join(cells) + '|'
    return readme[:start] + '\n'.join(rows) + readme[end:]


def main(argv):
    with open(SOURCE, encoding='utf-8') as f:
        source = f.read()
    with open(README, encoding='utf-8') as f:
        readme = f.read()
    new = with_counts(updated(readme, source), compatibility_counts())
    if '--check' in argv:
        if new != readme:
            print('README.md\'s chapter or compatibility table does not match '
                  'onefchainer.py: run python3 docs/chapters.py')
            return 1
        print('README.md\'s chapter table matches onefchainer.py')
        return 0
    if new != readme:
        with open(README, 'w', encoding='utf-8') as f:
            f.write(new)
        print('README.md: tables rewritten')
    else:
        print('README.md: chapter table already up to date')
    missing = [entry['number'] for entry in outline(source)
               if entry['kind'] == 'chapter'
               and not _teaches(new.split(BEGIN)[1])[1].get(entry['number'])]
    if missing:
        print('chapters without a "what it teaches" cell: {}'.format(', '.join(missing)))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
