// A program linked statically, for elf_info_test: it has no ELF interpreter.
int main() {
  return 0;
}
