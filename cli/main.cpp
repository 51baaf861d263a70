// The millrace command line: a thin shell over the library (see cli/commands.cpp).
#include "cli/commands.hpp"

int main(int argc, char** argv) { return millrace::cli::main(argc, argv); }
