"""The Textual dashboard (`wmtp-studio` without arguments). Headless modules never import this package.

How screens read the store: polling.py; what they write to it and ask of the app: intents.py."""
