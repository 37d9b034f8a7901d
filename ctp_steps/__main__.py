from ctp_steps.cli import main

main()
