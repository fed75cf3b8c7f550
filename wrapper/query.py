"""ListOptions for the HTTP front; the parser lives in ``kubeapi.listoptions`` so the simulator
can parse queries as the apiserver does without importing the wrapper."""

from kubeapi.listoptions import MAX_TIMEOUT_SECONDS, ListOptions, check_continue_token, parse_list_options

__all__ = ["MAX_TIMEOUT_SECONDS", "ListOptions", "check_continue_token", "parse_list_options"]
