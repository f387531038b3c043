"""The lab behind asterisk/lab, one module per part (standard library only)."""
