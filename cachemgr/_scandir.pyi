VERSION: int

def scan_dir(
    fd: int, /
) -> tuple[int, int, list[tuple[str, int]], list[tuple[int, int, int, int]], float]: ...
