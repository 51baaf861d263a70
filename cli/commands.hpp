// The millrace subcommands. Exit codes: 0 success, 1 a run failed, 2 a config or usage error,
// 130 interrupted by Ctrl-C.
#pragma once

namespace millrace::cli {

int main(int argc, char** argv);
int run_command(int argc, char** argv);

}  // namespace millrace::cli
