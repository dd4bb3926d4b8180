from shapectrl.cli import main

main()
