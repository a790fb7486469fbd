"""Hostile text shared by tests of several modules."""

# What a guest or a record could print to take over a terminal: OSC 52 (clipboard), a title, a screen
# clear, a carriage return that overwrites, BEL, a C1 CSI, DCS and a full reset.
TERMINAL_ATTACK = "OSC52 \x1b]52;c;cm0gLXJmIH4=\x07 title \x1b]0;pwned\x07 clear \x1b[2J cr \roverwrite bel \x07 " \
                  "c1 \x9b31m st \x1bP+q\x1b\\ reset \x1bc end"
