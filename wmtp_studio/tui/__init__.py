"""The Textual dashboard (`wmtp-studio` without arguments). Headless modules never import this package."""
