from molctrl.cli import main

main()
